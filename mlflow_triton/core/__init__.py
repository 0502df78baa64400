"""Small pieces every layer shares and that depend on nothing else of ours: the golden-output
format, the tolerance comparison, secret masking.
"""
