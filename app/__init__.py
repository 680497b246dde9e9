"""paraserve: answers "are these two sentences paraphrases?" over HTTP, OIP v2 REST and gRPC with int8 BERT-family models."""
