"""Training, masked-LM pre-training and the default-store bootstrap. Never imported by the serving path."""
