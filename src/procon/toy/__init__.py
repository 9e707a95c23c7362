"""The built-in toy world: a small aligned chat model and the synthetic data it is trained on."""
