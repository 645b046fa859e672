"""flame"""
