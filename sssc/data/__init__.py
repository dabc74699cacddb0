"""sssc.data"""
