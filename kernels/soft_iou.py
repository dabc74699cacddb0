def pairwise_soft_iou(*a, **k): raise NotImplementedError
def pairwise_soft_iou_reference(*a, **k): raise NotImplementedError
