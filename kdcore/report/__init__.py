"""What a person sees: the one console (notes, progress, results), the metrics tables, evaluation
reports rendered, comparisons of runs and their figures."""
