"""Measuring a student against the teacher on real text: the metrics (each defined once), the text
windows, the baselines, and decoding a continuation."""
