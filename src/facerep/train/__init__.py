"""Training loops: the one optimizer step (``step``), pre-training (``pretrain``), fine-tuning, evaluation
and the checkpoint record both trainers save and resume (``state``)."""
