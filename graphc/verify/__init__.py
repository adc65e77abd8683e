"""graphc.verify"""
