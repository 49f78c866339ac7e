"""Small utilities shared by the scripts, in the shape EDM users know (dnnlib.EasyDict, dnnlib.util)."""

from .util import EasyDict, DownloadError, construct_class_by_name, file_sha256, get_obj_by_name, make_cache_dir_path, open_url, write_atomic

__all__ = ['EasyDict', 'DownloadError', 'construct_class_by_name', 'file_sha256', 'get_obj_by_name', 'make_cache_dir_path', 'open_url', 'write_atomic']
