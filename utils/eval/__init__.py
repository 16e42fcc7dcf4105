"""Stage 05: tasks, evaluation, quality and assessment, lm-eval comparison."""
