"""procon: LoRA fine-tuning of aligned chat models under the ProCon refusal-direction constraint."""

__version__ = "0.1.0"
