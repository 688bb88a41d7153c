"""Settings of the library's tests beyond the root `conftest.py`."""

import os

import hypothesis

# Hypothesis: a small, reproducible profile in the suite; `HYPOTHESIS_PROFILE=thorough` for more.
hypothesis.settings.register_profile(
  "default",
  max_examples=8,
  deadline=None,
  derandomize=True,
  suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile("thorough", max_examples=500, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
