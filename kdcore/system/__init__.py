"""Process-level helpers that know nothing of distillation: torchrun, helper threads, allocator
tuning, locks, whole-or-nothing file writes, the cache folder."""
