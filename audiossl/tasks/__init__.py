"""What is done with an encoder once it exists: fine-tuning, probing, evaluation, and their accounting.

* ``finetune``          ``FinetuneModule``: an encoder turned into a classifier (EAT, SSLAM, AudioMAE, AST recipes)
* ``probe``             ``ProbeModule``: a probe head (CGP, linear, LCGP, Head2Toe) on a frozen encoder
* ``asymmetric_loss``   the asymmetric multi-label loss BAT probes AudioSet with
* ``evaluate``          ``audiossl evaluate``: a classifier scored on a split, every clip once
* ``metrics``           mAP, mAUC, d-prime, accuracy as the leaderboards compute them
* ``weight_averaging``  AST's average of per-epoch weights
* ``logreg_baseline``   the simple baseline: logistic regression on each clip's mean log-mel
* ``flops``             model FLOPs per clip and MFU
* ``probe_memory``      the peak memory of a probe step, modelled and measured
"""
