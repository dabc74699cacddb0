"""sssc.segment"""
