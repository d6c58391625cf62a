"""Self-supervised objectives on the shared encoder, one file each; ``OBJECTIVES`` maps names to classes.

What they share: ``base`` (``PretrainModule``), ``masking`` (masks as pure functions of index tensors), ``ema`` (the
EMA teacher), ``targets`` (teacher targets), ``beats_tokenizers`` (BEATs' tokenizers; ``beats_tokenizer_training``
trains one)."""

from audiossl.objectives.base import PretrainModule
from audiossl.objectives.bat import BAT
from audiossl.objectives.beats import BEATs
from audiossl.objectives.beats_tokenizer_training import BEATsTokenizer
from audiossl.objectives.eat import EAT
from audiossl.objectives.jepa import JEPA
from audiossl.objectives.mae import MAE
from audiossl.objectives.sslam import SSLAM

OBJECTIVES = {"mae": MAE, "eat": EAT, "jepa": JEPA, "sslam": SSLAM, "beats": BEATs, "beats_tokenizer": BEATsTokenizer,
              "bat": BAT}

__all__ = ["BAT", "BEATs", "BEATsTokenizer", "EAT", "JEPA", "MAE", "OBJECTIVES", "PretrainModule", "SSLAM"]
