"""`make demo`: the main job on the built-in default model and data, written as a small report.

* :mod:`~visionlens.apps.demo.report` -- the report (:func:`~visionlens.apps.demo.report.run_demo`) and
  its command line, ``python -m visionlens.apps.demo --out report``;
* :mod:`~visionlens.apps.demo.analyses` -- direct logit attribution with the top channels' feature
  visualizations and dataset examples, activation patching (regions, channels), attention;
* :mod:`~visionlens.apps.demo.scrubbing` -- causal scrubbing on a planted (hand-set) circuit;
* :mod:`~visionlens.apps.demo.transfer` -- the technique-transfer table on the zoo (quick subset), with
  its headline and caveats;
* :mod:`~visionlens.apps.demo.progress` -- one progress line per step on stderr.
"""
