"""The ``audiossl`` command: ``main`` (the entry point, one line per verb) and the verbs that orchestrate the rest.

* ``main``        the entry point and the verb table
* ``prep``        ``audiossl prep NAME`` (the converters) and ``audiossl stats``
* ``train``       ``audiossl pretrain``, ``finetune`` and ``probe``: LightningCLI over a module and the data
* ``preemption``  checkpoint-and-requeue on SLURM's warning signal, for the training verbs
* ``predict``     ``audiossl predict``: top-k labels of audio files
* ``demo``        ``audiossl demo``: the whole framework end to end
* ``compare``     ``audiossl compare``: every objective at one budget, one table
* ``bench``       ``audiossl bench``: speed as ratios against baselines
* ``plot``        ``audiossl plot``: log-mel, predictions over time, training curves

Verbs whose work lives in one module of another room keep their ``main`` beside it (``evaluate`` in ``tasks``,
``export`` in ``hub``, ``convert`` in ``convert``).
"""
