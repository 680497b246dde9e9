"""paraserve: an HTTP service answering "are these two sentences paraphrases?" with a TorchScript BERT."""
