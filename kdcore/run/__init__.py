"""A run's folder (`runs/<experiment>/`): every path in it, its checkpoints and records, the metrics
log, and the student it ships (the artifact others open)."""
