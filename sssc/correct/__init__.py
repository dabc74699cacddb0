"""sssc.correct"""
