from fastbind.workers import *
