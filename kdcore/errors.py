"""The former home of LlamaKD's errors, kept so that plugins written for it keep working: import
`KDError` and `ParamError` from `kdcore.api` instead."""

from kdcore.problems import KDError, ParamError  # noqa: F401
