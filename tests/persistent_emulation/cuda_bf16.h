// Stands in for the CUDA header of this name when the CPU emulation compiles csrc/persistent/ with g++.
#pragma once
#include "emulation.h"
