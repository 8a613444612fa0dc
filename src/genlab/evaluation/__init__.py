"""Trained models and how they are judged: the model file and its run, upstream models (classifier,
perceptual network, tokenizer), the domain classifier's training, scoring samples, latent figures."""
