"""The front end: audio in, model input out.

* ``audio``     decode any audio file or bytes to mono float32, resample, encode FLAC
* ``features``  the Kaldi-compatible log-mel fbank (batched, any device) and ``FrontEnd`` (pad/crop, normalise)
* ``bat_mel``   BAT's front end: power mel -> dB -> per-clip min-max
* ``augment``   waveform and spectrogram augmentations (roll + gain, mixup, SpecAugment) as pure functions
"""
