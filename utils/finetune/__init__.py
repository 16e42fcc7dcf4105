"""Stages 03-04: SFT and DPO with TRL and PEFT.

  config.py        FinetuneConfig (the settings SFT and DPO share) and FINETUNE_HELP, their --help texts
  sources.py       records from .json/.jsonl(.gz) files, directories or hub ids (or their LUMI_DATA_DIR mirror)
  datasets.py      SFT and preference formats read into one shape, validated; seeded splits
  tokenization.py  SFT rows with completion masks, DPO rows, the count of sequences over max_length
  models.py        model and adapter loading with the base check, LoRA settings, adapter/ and merged/ exports
  trainer.py       the TrainingArguments SFT and DPO share, the metrics/time-limit/early-stopping callbacks
  rundir.py        the run directory: name, checkpoint-N discovery, resume checks, metrics.jsonl
  gain.py          the held-out items of the before/after gain, the validation split, Measurement, format_score
  runner.py        run_finetune: the stage run both stages share (StageSpec holds what differs)
  sft.py           stage 03: SFT data, the held-out answer match and response loss, the SFTTrainer
  dpo.py           stage 04: DPO data, the held-out preference accuracy, the DPOTrainer
"""
