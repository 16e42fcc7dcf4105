"""Stages 03-04: SFT and DPO with TRL and PEFT."""
