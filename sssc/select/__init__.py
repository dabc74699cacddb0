"""sssc.select"""
