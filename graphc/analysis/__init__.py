"""graphc.analysis"""
