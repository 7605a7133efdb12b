"""Inference: the one prefill/decode engine (sampling, stop strings), used by evaluation, the suites, the
probe and the generate CLI."""
