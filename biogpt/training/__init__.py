"""Training: one loop (`loop`) that fine-tuning (`finetune`) and pretraining (`pretrain`)
both drive; its settings and schedule (`config`), what it is fed (`batching`), one update's
gradient (`step`) and loss (`loss`), checkpoints and resuming (`state`) and loss curves
(`plot`)."""
