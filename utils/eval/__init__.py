"""Stage 05 (scripts/05_evaluate.py): benchmarks, perplexity, smoke prompts, a report.

tasks            HellaSwag, ARC, BoolQ loaders in their original formats, lm-eval's prompts; the datasets named
wikitext         WikiText-2 pages for perplexity, split and detokenized as lm-eval's wikitext task
evaluate         EvalConfig, evaluate_model: the tasks, the smoke prompts, results.json and report.md
quality          the smoke-response quality heuristics
assessment       verdicts against expected ranges per size class, recommendations
lm_eval_compare  item-by-item agreement with lm-evaluation-harness itself
"""
