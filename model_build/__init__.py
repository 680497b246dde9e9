"""Fine-tune, build, verify and evaluate paraserve's artifacts (BERT and MPNet families; TorchScript and OpenVINO engines)."""
