"""Decoding and motion computation; writes stores laid out as `motionssl.data_specs` declares."""
