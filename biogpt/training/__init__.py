"""Training: one loop (`loop`) that fine-tuning (`finetune`) and pretraining (`pretrain`)
both drive; what it is fed (`batching`), the loss (`loss`), checkpoints and resuming
(`state`) and loss curves (`plot`)."""
