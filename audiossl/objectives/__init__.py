"""Self-supervised objectives on the shared encoder, one file each; ``OBJECTIVES`` maps names to classes."""

from audiossl.objectives.base import PretrainModule
from audiossl.objectives.bat import BAT
from audiossl.objectives.beats import BEATs
from audiossl.objectives.beats_tokenizer import BEATsTokenizer
from audiossl.objectives.eat import EAT
from audiossl.objectives.jepa import JEPA
from audiossl.objectives.mae import MAE
from audiossl.objectives.sslam import SSLAM

OBJECTIVES = {"mae": MAE, "eat": EAT, "jepa": JEPA, "sslam": SSLAM, "beats": BEATs, "beats_tokenizer": BEATsTokenizer,
              "bat": BAT}

__all__ = ["BAT", "BEATs", "BEATsTokenizer", "EAT", "JEPA", "MAE", "OBJECTIVES", "PretrainModule", "SSLAM"]
