"""sssc.eval"""
