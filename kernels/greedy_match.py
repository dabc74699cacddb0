def greedy_match(*a, **k): raise NotImplementedError
def greedy_match_reference(*a, **k): raise NotImplementedError
