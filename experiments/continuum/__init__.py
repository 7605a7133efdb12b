"""A controlled capability continuum: a synthetic world where the model's prior on the SFT task is a dial."""
