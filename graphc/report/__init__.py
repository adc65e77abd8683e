"""graphc.report"""
