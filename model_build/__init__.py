"""Build, verify, evaluate and fine-tune paraserve's TorchScript BERT artifacts."""
