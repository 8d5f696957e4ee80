"""How good a model is: the report's metrics on the splits (evaluate, report), and judged evaluation on unjudged queries (judge, judge_eval) with stratified sampling."""
