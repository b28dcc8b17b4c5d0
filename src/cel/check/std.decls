# The standard library and the extensions celgate's environment registers
# (strings, lists, sets, math, encoders, optional types, regex), one overload a
# line:
#
#   name(param, ...) -> result           a global function
#   (receiver).name(param, ...) -> result a method
#
# A single capital letter is a type parameter. `dyn` accepts anything.
# Operators use their internal names (`_+_`, `_[_]`, `@in`, ...).

# Logic and conditionals.
!_(bool) -> bool
_&&_(bool, bool) -> bool
_||_(bool, bool) -> bool
_?_:_(bool, A, A) -> A
@not_strictly_false(bool) -> bool

# Equality: both sides of the same type (or dyn), as cel-go checks it.
_==_(A, A) -> bool
_!=_(A, A) -> bool

# Ordering, numbers compared across types.
_<_(bool, bool) -> bool
_<_(int, int) -> bool
_<_(int, uint) -> bool
_<_(int, double) -> bool
_<_(uint, int) -> bool
_<_(uint, uint) -> bool
_<_(uint, double) -> bool
_<_(double, int) -> bool
_<_(double, uint) -> bool
_<_(double, double) -> bool
_<_(string, string) -> bool
_<_(bytes, bytes) -> bool
_<_(timestamp, timestamp) -> bool
_<_(duration, duration) -> bool

# Arithmetic.
_+_(int, int) -> int
_+_(uint, uint) -> uint
_+_(double, double) -> double
_+_(string, string) -> string
_+_(bytes, bytes) -> bytes
_+_(list(A), list(A)) -> list(A)
_+_(duration, duration) -> duration
_+_(timestamp, duration) -> timestamp
_+_(duration, timestamp) -> timestamp
_-_(int, int) -> int
_-_(uint, uint) -> uint
_-_(double, double) -> double
_-_(timestamp, timestamp) -> duration
_-_(timestamp, duration) -> timestamp
_-_(duration, duration) -> duration
_*_(int, int) -> int
_*_(uint, uint) -> uint
_*_(double, double) -> double
_/_(int, int) -> int
_/_(uint, uint) -> uint
_/_(double, double) -> double
_%_(int, int) -> int
_%_(uint, uint) -> uint
-_(int) -> int
-_(double) -> double

# The accumulator of `transformMap` and `transformMapEntry` (internal).
cel.@mapInsert(map(K, V), K, V) -> map(K, V)
cel.@mapInsert(map(K, V), map(K, V)) -> map(K, V)

# Indexing and membership.
_[_](list(A), int) -> A
_[_](map(K, V), K) -> V
_[_](optional(list(A)), int) -> optional(A)
_[_](optional(map(K, V)), K) -> optional(V)
_[?_](list(A), int) -> optional(A)
_[?_](map(K, V), K) -> optional(V)
_[?_](optional(list(A)), int) -> optional(A)
_[?_](optional(map(K, V)), K) -> optional(V)
@in(A, list(A)) -> bool
@in(K, map(K, V)) -> bool

# Sizes.
size(string) -> int
size(bytes) -> int
size(list(A)) -> int
size(map(K, V)) -> int
(string).size() -> int
(bytes).size() -> int
(list(A)).size() -> int
(map(K, V)).size() -> int

# Conversions.
bool(bool) -> bool
bool(string) -> bool
bytes(bytes) -> bytes
bytes(string) -> bytes
double(double) -> double
double(int) -> double
double(uint) -> double
double(string) -> double
int(int) -> int
int(uint) -> int
int(double) -> int
int(string) -> int
int(timestamp) -> int
uint(uint) -> uint
uint(int) -> uint
uint(double) -> uint
uint(string) -> uint
string(string) -> string
string(bool) -> string
string(int) -> string
string(uint) -> string
string(double) -> string
string(bytes) -> string
string(timestamp) -> string
string(duration) -> string
duration(string) -> duration
duration(duration) -> duration
timestamp(string) -> timestamp
timestamp(timestamp) -> timestamp
timestamp(int) -> timestamp
dyn(A) -> dyn
type(A) -> type(A)

# Strings.
(string).contains(string) -> bool
(string).startsWith(string) -> bool
(string).endsWith(string) -> bool
(string).matches(string) -> bool
matches(string, string) -> bool

# Time.
(duration).getHours() -> int
(duration).getMinutes() -> int
(duration).getSeconds() -> int
(duration).getMilliseconds() -> int
(timestamp).getFullYear() -> int
(timestamp).getMonth() -> int
(timestamp).getDayOfYear() -> int
(timestamp).getDayOfMonth() -> int
(timestamp).getDate() -> int
(timestamp).getDayOfWeek() -> int
(timestamp).getHours() -> int
(timestamp).getMinutes() -> int
(timestamp).getSeconds() -> int
(timestamp).getMilliseconds() -> int
(timestamp).getFullYear(string) -> int
(timestamp).getMonth(string) -> int
(timestamp).getDayOfYear(string) -> int
(timestamp).getDayOfMonth(string) -> int
(timestamp).getDate(string) -> int
(timestamp).getDayOfWeek(string) -> int
(timestamp).getHours(string) -> int
(timestamp).getMinutes(string) -> int
(timestamp).getSeconds(string) -> int
(timestamp).getMilliseconds(string) -> int

# Optional types.
optional.none() -> optional(A)
optional.of(A) -> optional(A)
optional.ofNonZeroValue(A) -> optional(A)
(optional(A)).value() -> A
(optional(A)).hasValue() -> bool
(optional(A)).or(optional(A)) -> optional(A)
(optional(A)).orValue(A) -> A

# Strings extension.
(string).charAt(int) -> string
(string).indexOf(string) -> int
(string).indexOf(string, int) -> int
(string).lastIndexOf(string) -> int
(string).lastIndexOf(string, int) -> int
(list(string)).join() -> string
(list(string)).join(string) -> string
(string).lowerAscii() -> string
(string).upperAscii() -> string
(string).trim() -> string
(string).replace(string, string) -> string
(string).replace(string, string, int) -> string
(string).split(string) -> list(string)
(string).split(string, int) -> list(string)
(string).substring(int) -> string
(string).substring(int, int) -> string
(string).format(list(dyn)) -> string
(string).reverse() -> string
strings.quote(string) -> string

# Lists extension.
(list(A)).slice(int, int) -> list(A)
(list(dyn)).flatten() -> list(dyn)
(list(dyn)).flatten(int) -> list(dyn)
(list(A)).distinct() -> list(A)
(list(A)).reverse() -> list(A)
(list(A)).sort() -> list(A)
(list(A)).@sortByAssociatedKeys(list(B)) -> list(A)
lists.range(int) -> list(int)

# Sets extension.
sets.contains(list(A), list(A)) -> bool
sets.equivalent(list(A), list(A)) -> bool
sets.intersects(list(A), list(A)) -> bool

# Math extension (`math.greatest` and `math.least` expand to `@max`/`@min`;
# a list of numbers of mixed types is a `list(dyn)`).
math.ceil(double) -> double
math.floor(double) -> double
math.round(double) -> double
math.trunc(double) -> double
math.isInf(double) -> bool
math.isNaN(double) -> bool
math.isFinite(double) -> bool
math.abs(double) -> double
math.abs(int) -> int
math.abs(uint) -> uint
math.sign(double) -> double
math.sign(int) -> int
math.sign(uint) -> uint
math.bitAnd(int, int) -> int
math.bitAnd(uint, uint) -> uint
math.bitOr(int, int) -> int
math.bitOr(uint, uint) -> uint
math.bitXor(int, int) -> int
math.bitXor(uint, uint) -> uint
math.bitNot(int) -> int
math.bitNot(uint) -> uint
math.bitShiftLeft(int, int) -> int
math.bitShiftLeft(uint, int) -> uint
math.bitShiftRight(int, int) -> int
math.bitShiftRight(uint, int) -> uint
math.sqrt(double) -> double
math.sqrt(int) -> double
math.sqrt(uint) -> double
math.@max(int) -> int
math.@max(uint) -> uint
math.@max(double) -> double
math.@max(int, int) -> int
math.@max(uint, uint) -> uint
math.@max(double, double) -> double
math.@max(int, uint) -> dyn
math.@max(int, double) -> dyn
math.@max(uint, int) -> dyn
math.@max(uint, double) -> dyn
math.@max(double, int) -> dyn
math.@max(double, uint) -> dyn
math.@max(list(int)) -> int
math.@max(list(uint)) -> uint
math.@max(list(double)) -> double
math.@min(int) -> int
math.@min(uint) -> uint
math.@min(double) -> double
math.@min(int, int) -> int
math.@min(uint, uint) -> uint
math.@min(double, double) -> double
math.@min(int, uint) -> dyn
math.@min(int, double) -> dyn
math.@min(uint, int) -> dyn
math.@min(uint, double) -> dyn
math.@min(double, int) -> dyn
math.@min(double, uint) -> dyn
math.@min(list(int)) -> int
math.@min(list(uint)) -> uint
math.@min(list(double)) -> double

# Encoders extension.
base64.encode(bytes) -> string
base64.decode(string) -> bytes
