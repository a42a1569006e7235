"""Repair: weight updates after a verified structural rewrite that win back one-shot accuracy
(norm statistics re-estimated, consumer layers refitted by least squares). They change
values, never structure, and are reported as such."""
