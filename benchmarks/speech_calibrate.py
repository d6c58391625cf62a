"""How hard is the speech benchmark? Build variants of it and score the mean-log-mel logistic regression on each.

    PYTHONPATH=. python benchmarks/speech_calibrate.py --work /tmp/speechcal [--only NAME ...]

Measured 2026 on the 2-core development machine (espeak-ng 1.51, sox 14.4.2; accuracy on the 400 held-out-voice
clips, mean log-mel / + time statistics): 40voices 0.900 / 0.980, 10voices 0.815 / 0.952, 40voices_channel
0.793 / 0.957, default (10voices_channel) 0.725 / 0.942, 10voices_channel_noisy 0.715 / 0.930,
40voices_channel_noisy_wide 0.777 / 0.918.

Each variant: ``data_prep.speech.build`` -> ``prep folder`` -> ``audiossl.tasks.logreg_baseline.logreg_baseline`` (mean log-mel,
and mean log-mel + time statistics). Prints one line per variant and writes WORK/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from audiossl.tasks.logreg_baseline import logreg_baseline
from audiossl.data.writer import WriterOptions
from data_prep.folder import convert
from data_prep.speech import Settings, build

# 40voices: 40 training voices x 5 takes; 10voices: 10 x 20 (both 2,000 clips); channel: every voice through its
# own microphone; noisy: every take noisy at 5-25 dB; wide: wider speed and pitch ranges. "default" = 10voices_channel.
_40 = dict(train_voices=40, takes=5)
_10 = dict(train_voices=10, takes=20)
_NOISY = dict(noise_prob=1.0, snr_db=(5.0, 25.0))
VARIANTS = {
    "40voices": Settings(**_40, channel_prob=0.0),
    "10voices": Settings(**_10, channel_prob=0.0),
    "40voices_channel": Settings(**_40, channel_prob=1.0),
    "default": Settings(),
    "10voices_channel_noisy": Settings(**_10, channel_prob=1.0, **_NOISY),
    "40voices_channel_noisy_wide": Settings(**_40, channel_prob=1.0, **_NOISY, speed_wpm=(110.0, 260.0),
                                            pitch=(10.0, 90.0)),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/tmp/speechcal")
    p.add_argument("--only", nargs="*", default=None)
    a = p.parse_args()
    work = Path(a.work)
    results = json.loads((work / "calibration.json").read_text()) if (work / "calibration.json").is_file() else {}
    for name, s in VARIANTS.items():
        if a.only and name not in a.only:
            continue
        t0 = time.perf_counter()
        r = build(work / name / "audio", s, progress=False)
        convert(str(r.csv), str(r.out), str(work / name / "shards"), options=WriterOptions(workers=2, progress=False))
        t_build = time.perf_counter() - t0
        mean = logreg_baseline(str(work / name / "shards"))
        temporal = logreg_baseline(str(work / name / "shards"), temporal=True)
        results[name] = {"settings": repr(s), "counts": r.counts, "durations": r.durations,
                         "build_s": t_build, "mean_logmel_accuracy": mean["accuracy"],
                         "temporal_accuracy": temporal["accuracy"], "mean_logmel_mAP": mean["mAP"]}
        print(f"{name:>24}: mean-log-mel acc {mean['accuracy']:.3f} (mAP {mean['mAP']:.3f}), +time stats acc "
              f"{temporal['accuracy']:.3f}; build {t_build:.0f} s", flush=True)
        (work / "calibration.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
