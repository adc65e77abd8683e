"""graphc.calib"""
