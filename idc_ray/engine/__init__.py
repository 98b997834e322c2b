"""The pure-PyTorch IDC engine: formation, augmentation, matching, expert, stored set, matcher.

Nothing here imports Ray or reads files; the distributed layer and the jobs build on it.
"""
