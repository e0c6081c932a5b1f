"""The built-in ``image`` processor: img2dataset's decode, filter, blur, resize and encode, its pixel bugs fixed."""
