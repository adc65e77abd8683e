"""graphc.bench"""
