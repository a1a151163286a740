"""perft_peft.trainer: the PerftTrainer (router auxiliary losses, two-phase LoRACoE schedule) lives here."""
