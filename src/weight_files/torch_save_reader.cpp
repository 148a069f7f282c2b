#include "torch_save_reader.h"

#include "zip_archive.h"

#include <ATen/ATen.h>

#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <variant>

namespace rotary_attention::detail {
namespace {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct Global {
  std::string module, name;
};
struct Mark {};
struct Tuple {
  std::vector<ValuePtr> items;
};
struct List {
  std::vector<ValuePtr> items;
};
struct Dict {
  std::vector<std::pair<ValuePtr, ValuePtr>> items;
};
struct Bytes {
  std::string data;
};
// A storage named by the pickle: its record is checked when it is named, and
// read only when a tensor over it is selected (a prefix leaves the rest of a
// checkpoint unread).
struct LazyStorage {
  std::string record;
  c10::ScalarType dtype;
  int64_t numel;
  at::Tensor flat; // 1-D over the whole storage, once read
};
struct Storage {
  std::shared_ptr<LazyStorage> storage;
};
// A tensor as _rebuild_tensor_v2 describes it, built when selected.
struct TensorRecord {
  std::shared_ptr<LazyStorage> storage;
  int64_t offset;
  std::vector<int64_t> sizes, strides;
};

struct Value {
  std::variant<
      std::monostate,
      bool,
      int64_t,
      double,
      std::string,
      Bytes,
      Global,
      Mark,
      Tuple,
      List,
      Dict,
      Storage,
      TensorRecord>
      v;
  ~Value();
};

// Moves a container's items out, so that they can be released one by one.
void take_children(Value& value, std::vector<ValuePtr>& out) {
  if (auto* l = std::get_if<List>(&value.v)) {
    std::move(l->items.begin(), l->items.end(), std::back_inserter(out));
    l->items.clear();
  } else if (auto* t = std::get_if<Tuple>(&value.v)) {
    std::move(t->items.begin(), t->items.end(), std::back_inserter(out));
    t->items.clear();
  } else if (auto* d = std::get_if<Dict>(&value.v)) {
    for (auto& [k, v] : d->items) {
      out.push_back(std::move(k));
      out.push_back(std::move(v));
    }
    d->items.clear();
  }
}

// Released iteratively: a crafted pickle can nest lists a million deep, and
// recursive destruction would overflow the stack.
Value::~Value() {
  std::vector<ValuePtr> pending;
  take_children(*this, pending);
  while (!pending.empty()) {
    ValuePtr p = std::move(pending.back());
    pending.pop_back();
    if (p && p.use_count() == 1) {
      take_children(*p, pending);
    }
  }
}

template <typename T>
ValuePtr make(T x) {
  auto p = std::make_shared<Value>();
  p->v = std::move(x);
  return p;
}

template <typename T>
const T& as(const ValuePtr& p, const char* what) {
  const T* x = std::get_if<T>(&p->v);
  TORCH_CHECK(x != nullptr, "load_tensors: malformed state dict file (expected ", what, ")");
  return *x;
}

// Pickle strings are UTF-8; keys that are not could not reach Python, or a
// user, as text. Checks the encoding's shape (lengths and continuation bytes,
// no overlong forms or surrogates).
bool is_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t n;
    uint32_t code;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1, code = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, code = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, code = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) {
      return false; // truncated sequence
    }
    for (size_t k = 1; k <= n; ++k) {
      const auto next = static_cast<uint8_t>(s[i + k]);
      if ((next & 0xc0) != 0x80) {
        return false;
      }
      code = (code << 6) | (next & 0x3f);
    }
    static constexpr uint32_t kSmallest[] = {0, 0x80, 0x800, 0x10000};
    if (code < kSmallest[n] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

// The globals a file may name: no wider than torch.load(weights_only=True)'s.
// Anything else is refused when the pickle names it, before any object of it
// exists.
bool is_storage_type(const std::string& name);

void check_allowed(const Global& g) {
  const bool allowed =
      (g.module == "collections" && g.name == "OrderedDict") ||
      (g.module == "_codecs" && g.name == "encode") || // bytes, in pickle protocol 2
      (g.module == "torch._utils" &&
       (g.name == "_rebuild_tensor_v2" || g.name == "_rebuild_parameter")) ||
      (g.module == "torch" && is_storage_type(g.name));
  TORCH_CHECK(
      allowed,
      "load_tensors: the file names the global ",
      g.module,
      ".",
      g.name,
      ", which is not allowed (only tensors, their storages, OrderedDict and plain containers "
      "and values are read, as torch.load(weights_only=True) reads them); nothing of it was built");
}

// UTF-8 text whose code points are all below 256, as those bytes.
std::string latin1(const std::string& utf8) {
  std::string out;
  for (size_t i = 0; i < utf8.size(); ++i) {
    const auto c = static_cast<uint8_t>(utf8[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      TORCH_CHECK(
          (c & 0xfe) == 0xc2 && i + 1 < utf8.size(),
          "load_tensors: malformed pickle (latin1 bytes above 255)");
      out.push_back(
          static_cast<char>(((c & 0x03) << 6) | (static_cast<uint8_t>(utf8[++i]) & 0x3f)));
    }
  }
  return out;
}

c10::ScalarType storage_dtype(const std::string& name) {
  for (auto t :
       {at::kFloat,
        at::kDouble,
        at::kHalf,
        at::kBFloat16,
        at::kLong,
        at::kInt,
        at::kShort,
        at::kChar,
        at::kByte,
        at::kBool,
        at::kComplexFloat,
        at::kComplexDouble}) {
    if (name == std::string(c10::toString(t)) + "Storage") {
      return t;
    }
  }
  TORCH_CHECK(false, "load_tensors: unsupported storage type torch.", name);
}

bool is_storage_type(const std::string& name) {
  try {
    storage_dtype(name);
    return true;
  } catch (const c10::Error&) {
    return false;
  }
}

class Reader {
 public:
  Reader(const ZipArchive& zip, std::string pkl) : zip_(zip), data_(std::move(pkl)) {}
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // A pickle can make a container hold itself (through the memo); emptying
  // every memoized container breaks such cycles, which would otherwise leak.
  ~Reader() {
    std::vector<ValuePtr> pending;
    for (auto& [index, value] : memo_) {
      take_children(*value, pending);
    }
  }

  ValuePtr run() {
    while (true) {
      const uint8_t op = u8();
      switch (op) {
        case 0x80:
          u8();
          break; // PROTO
        case 0x95:
          read(8);
          break; // FRAME
        case '.':
          return pop(); // STOP
        case 'c': {     // GLOBAL
          std::string module = line();
          Global g{module, line()};
          check_allowed(g);
          push(make(std::move(g)));
          break;
        }
        case 0x93: { // STACK_GLOBAL
          std::string name = as<std::string>(pop(), "a name");
          Global g{as<std::string>(pop(), "a module"), name};
          check_allowed(g);
          push(make(std::move(g)));
          break;
        }
        case '0':
          pop();
          break; // POP
        case '1':
          pop_to_mark();
          break; // POP_MARK
        case '2':
          push(top());
          break; // DUP
        case 'q':
          memo_[u8()] = top();
          break; // BINPUT
        case 'r':
          memo_[u32()] = top();
          break; // LONG_BINPUT
        case 0x94:
          memo_[memo_.size()] = top();
          break; // MEMOIZE
        case 'h':
          push(memo(u8()));
          break; // BINGET
        case 'j':
          push(memo(u32()));
          break; // LONG_BINGET
        case '(':
          push(make(Mark{}));
          break;
        case '}':
          push(make(Dict{}));
          break;
        case ']':
          push(make(List{}));
          break;
        case ')':
          push(make(Tuple{}));
          break;
        case 'N':
          push(make(std::monostate{}));
          break;
        case 0x88:
          push(make(true));
          break;
        case 0x89:
          push(make(false));
          break;
        case 'K':
          push(make(static_cast<int64_t>(u8())));
          break;
        case 'M':
          push(make(static_cast<int64_t>(u16())));
          break;
        case 'J':
          push(make(static_cast<int64_t>(static_cast<int32_t>(u32()))));
          break;
        case 0x8a:
          push(make(long1()));
          break; // LONG1
        case 'G':
          push(make(binfloat()));
          break;
        case 'X':
          push(make(utf8(read(u32()))));
          break; // BINUNICODE
        case 0x8c:
          push(make(utf8(read(u8()))));
          break; // SHORT_BINUNICODE
        case 0x8d:
          push(make(utf8(read(u64()))));
          break; // BINUNICODE8
        case 'C':
          push(make(Bytes{read(u8())}));
          break; // SHORT_BINBYTES
        case 'B':
          push(make(Bytes{read(u32())}));
          break; // BINBYTES
        case 0x8e:
          push(make(Bytes{read(u64())}));
          break; // BINBYTES8
        case 't':
          push(make(Tuple{pop_to_mark()}));
          break;
        case 0x85:
          push(make(Tuple{pop_n(1)}));
          break;
        case 0x86:
          push(make(Tuple{pop_n(2)}));
          break;
        case 0x87:
          push(make(Tuple{pop_n(3)}));
          break;
        case 'a': { // APPEND
          auto item = pop();
          list_of(top()).push_back(item);
          break;
        }
        case 'e': { // APPENDS
          auto items = pop_to_mark();
          auto& l = list_of(top());
          l.insert(l.end(), items.begin(), items.end());
          break;
        }
        case 's': { // SETITEM
          auto value = pop();
          auto key = pop();
          dict_of(top()).items.emplace_back(key, value);
          break;
        }
        case 'u': { // SETITEMS
          auto items = pop_to_mark();
          TORCH_CHECK(items.size() % 2 == 0, "load_tensors: malformed SETITEMS");
          auto& d = dict_of(top());
          for (size_t i = 0; i < items.size(); i += 2) {
            d.items.emplace_back(items[i], items[i + 1]);
          }
          break;
        }
        case 'b':
          pop();
          break; // BUILD: an OrderedDict's state (_metadata) is not needed
        case 'Q':
          push(persistent_load(pop()));
          break;    // BINPERSID
        case 'R': { // REDUCE
          auto args = pop();
          auto callable = pop();
          push(reduce(as<Global>(callable, "a callable"), as<Tuple>(args, "arguments").items));
          break;
        }
        default:
          TORCH_CHECK(
              false,
              "load_tensors: unsupported pickle opcode 0x",
              std::hex,
              int(op),
              " (the file should hold a dict of tensors saved with torch.save)");
      }
    }
  }

 private:
  ValuePtr reduce(const Global& g, const std::vector<ValuePtr>& args) {
    if (g.module == "collections" && g.name == "OrderedDict") {
      return make(Dict{});
    }
    if (g.module == "_codecs" && g.name == "encode") {
      // Protocol 2 writes bytes as _codecs.encode(text, "latin1"): each code
      // point below 256 is one byte.
      TORCH_CHECK(
          args.size() == 2 && as<std::string>(args[1], "an encoding") == "latin1",
          "load_tensors: _codecs.encode is read only as pickle protocol 2 writes bytes");
      return make(Bytes{latin1(as<std::string>(args[0], "a string"))});
    }
    if (g.module == "torch._utils" && g.name == "_rebuild_tensor_v2") {
      TORCH_CHECK(args.size() >= 4, "load_tensors: malformed tensor record");
      TensorRecord t{
          as<Storage>(args[0], "a storage").storage, as<int64_t>(args[1], "an offset"), {}, {}};
      for (const auto& s : as<Tuple>(args[2], "sizes").items)
        t.sizes.push_back(as<int64_t>(s, "a size"));
      for (const auto& s : as<Tuple>(args[3], "strides").items)
        t.strides.push_back(as<int64_t>(s, "a stride"));
      TORCH_CHECK(
          t.sizes.size() == t.strides.size(),
          "load_tensors: malformed tensor record (sizes, strides)");
      return make(std::move(t));
    }
    if (g.module == "torch._utils" && g.name == "_rebuild_parameter") {
      TORCH_CHECK(!args.empty(), "load_tensors: malformed parameter record");
      return make(as<TensorRecord>(args[0], "a tensor"));
    }
    // (Storage types are allowed globals, but only as persistent ids.)
    TORCH_CHECK(false, "load_tensors: malformed pickle (", g.module, ".", g.name, " called)");
  }

  ValuePtr persistent_load(const ValuePtr& id) {
    const auto& t = as<Tuple>(id, "a storage id").items;
    TORCH_CHECK(
        t.size() == 5 && as<std::string>(t[0], "'storage'") == "storage",
        "load_tensors: malformed storage id");
    const auto dtype = storage_dtype(as<Global>(t[1], "a storage type").name);
    const std::string key = as<std::string>(t[2], "a storage key");
    const int64_t numel = as<int64_t>(t[4], "a storage size");
    auto it = storages_.find(key);
    if (it != storages_.end()) {
      TORCH_CHECK(
          it->second->dtype == dtype && it->second->numel == numel,
          "load_tensors: storage ",
          key,
          " is named twice with different types or sizes");
      return make(Storage{it->second});
    }
    // The record's size is checked against the element count before anything
    // is allocated: a crafted count cannot make the reader allocate more than
    // the file holds.
    const std::string record = "data/" + key;
    TORCH_CHECK(zip_.has(record), "load_tensors: storage ", key, " has no record ", record);
    const uint64_t nbytes = zip_.size(record); // no more than the file holds
    const uint64_t item = c10::elementSize(dtype);
    TORCH_CHECK(
        numel >= 0 && static_cast<uint64_t>(numel) <= nbytes / item &&
            static_cast<uint64_t>(numel) * item == nbytes,
        "load_tensors: storage ",
        key,
        " has ",
        nbytes,
        " bytes, which do not hold ",
        numel,
        " elements of ",
        dtype);
    auto storage = std::make_shared<LazyStorage>(LazyStorage{record, dtype, numel, {}});
    storages_.emplace(key, storage);
    return make(Storage{storage});
  }

 public:
  // The tensor a record describes, its storage read on first use. Its sizes,
  // strides and offset are checked against the storage by as_strided.
  at::Tensor materialize(const TensorRecord& t) const {
    LazyStorage& s = *t.storage;
    if (!s.flat.defined()) {
      at::Tensor flat = at::empty({s.numel}, at::TensorOptions().dtype(s.dtype));
      const uint64_t nbytes = static_cast<uint64_t>(s.numel) * c10::elementSize(s.dtype);
      if (nbytes > 0) {
        zip_.read(s.record, flat.data_ptr(), nbytes);
      }
      s.flat = flat;
    }
    return s.flat.as_strided(t.sizes, t.strides, t.offset);
  }

 private:
  std::vector<ValuePtr>& list_of(const ValuePtr& p) {
    auto* l = std::get_if<List>(&p->v);
    TORCH_CHECK(l != nullptr, "load_tensors: malformed APPEND");
    return l->items;
  }
  Dict& dict_of(const ValuePtr& p) {
    auto* d = std::get_if<Dict>(&p->v);
    TORCH_CHECK(d != nullptr, "load_tensors: malformed SETITEM");
    return *d;
  }

  void push(ValuePtr v) {
    stack_.push_back(std::move(v));
  }
  ValuePtr top() {
    TORCH_CHECK(!stack_.empty(), "load_tensors: malformed pickle (empty stack)");
    return stack_.back();
  }
  ValuePtr pop() {
    auto v = top();
    stack_.pop_back();
    return v;
  }
  std::vector<ValuePtr> pop_n(size_t n) {
    TORCH_CHECK(stack_.size() >= n, "load_tensors: malformed pickle (short stack)");
    std::vector<ValuePtr> out(stack_.end() - n, stack_.end());
    stack_.resize(stack_.size() - n);
    return out;
  }
  std::vector<ValuePtr> pop_to_mark() {
    for (size_t i = stack_.size(); i-- > 0;) {
      if (std::holds_alternative<Mark>(stack_[i]->v)) {
        std::vector<ValuePtr> out(stack_.begin() + i + 1, stack_.end());
        stack_.resize(i);
        return out;
      }
    }
    TORCH_CHECK(false, "load_tensors: malformed pickle (no MARK)");
  }
  ValuePtr memo(size_t i) {
    auto it = memo_.find(i);
    TORCH_CHECK(it != memo_.end(), "load_tensors: malformed pickle (memo ", i, ")");
    return it->second;
  }

  std::string utf8(std::string s) {
    TORCH_CHECK(is_utf8(s), "load_tensors: malformed pickle (a string is not UTF-8)");
    return s;
  }
  std::string read(size_t n) {
    TORCH_CHECK(pos_ + n <= data_.size(), "load_tensors: truncated pickle");
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  uint64_t little_endian(size_t n) {
    const std::string b = read(n);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i)
      v |= static_cast<uint64_t>(static_cast<uint8_t>(b[i])) << (8 * i);
    return v;
  }
  uint8_t u8() {
    return static_cast<uint8_t>(little_endian(1));
  }
  uint16_t u16() {
    return static_cast<uint16_t>(little_endian(2));
  }
  uint32_t u32() {
    return static_cast<uint32_t>(little_endian(4));
  }
  size_t u64() {
    const uint64_t n = little_endian(8);
    TORCH_CHECK(n <= data_.size(), "load_tensors: truncated pickle");
    return static_cast<size_t>(n);
  }
  int64_t long1() {
    const size_t n = u8();
    TORCH_CHECK(n <= 8, "load_tensors: integer too large");
    if (n == 0)
      return 0;
    uint64_t v = little_endian(n);
    if (n < 8 && (v >> (8 * n - 1)) & 1)
      v |= ~uint64_t(0) << (8 * n); // sign-extend
    return static_cast<int64_t>(v);
  }
  double binfloat() { // big-endian IEEE double
    const std::string b = read(8);
    uint64_t bits = 0;
    for (char c : b)
      bits = (bits << 8) | static_cast<uint8_t>(c);
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
  }
  std::string line() {
    const size_t end = data_.find('\n', pos_);
    TORCH_CHECK(end != std::string::npos, "load_tensors: truncated pickle");
    std::string s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return utf8(std::move(s));
  }

  const ZipArchive& zip_;
  std::string data_;
  size_t pos_ = 0;
  std::vector<ValuePtr> stack_;
  std::map<size_t, ValuePtr> memo_;
  std::map<std::string, std::shared_ptr<LazyStorage>> storages_;
};

// A dict key as a component of a dotted path: strings and integers (an
// optimizer state's parameter ids); tensors under other keys have no path.
std::optional<std::string> path_component(const ValuePtr& key) {
  if (const auto* k = std::get_if<std::string>(&key->v)) {
    return *k;
  }
  if (const auto* k = std::get_if<int64_t>(&key->v)) {
    return std::to_string(*k);
  }
  return std::nullopt;
}

// No more container entries than this are visited: shared containers (the
// memo) can make a small pickle describe an exponentially large tree. Paths
// are built per level, so depth is bounded too.
constexpr size_t kMaxEntries = 10'000'000;
constexpr size_t kMaxDepth = 10'000;

} // namespace

TorchSaveContents read_torch_save(const std::string& path, const std::string& prefix) {
  const ZipArchive zip(path);
  TORCH_CHECK(zip.has("data.pkl"), "load_tensors: '", path, "' has no data.pkl record");
  std::string pkl(zip.size("data.pkl"), '\0');
  if (!pkl.empty()) {
    zip.read("data.pkl", pkl.data(), pkl.size());
  }
  Reader reader(zip, std::move(pkl));
  const ValuePtr root = reader.run();
  TORCH_CHECK(
      std::holds_alternative<Dict>(root->v) || std::holds_alternative<List>(root->v) ||
          std::holds_alternative<Tuple>(root->v),
      "load_tensors: '",
      path,
      "' does not hold a dict (or list) of tensors");

  // Depth first, iteratively (nesting can be deep), in file order; a container
  // met again inside itself is a cycle.
  TorchSaveContents out;
  struct Frame {
    ValuePtr value;
    std::string path;
    bool leaving;
    size_t depth;
  };
  std::vector<Frame> pending{{root, "", false, 0}};
  std::set<const Value*> open;
  size_t visited = 0;
  while (!pending.empty()) {
    Frame f = std::move(pending.back());
    pending.pop_back();
    const Value* v = f.value.get();
    if (f.leaving) {
      open.erase(v);
      continue;
    }
    TORCH_CHECK(
        ++visited <= kMaxEntries,
        "load_tensors: '",
        path,
        "' describes more than ",
        kMaxEntries,
        " entries");
    if (const auto* t = std::get_if<TensorRecord>(&v->v)) {
      out.tensor_paths.push_back(f.path);
      if (f.path.compare(0, prefix.size(), prefix) == 0 && f.path.size() > prefix.size()) {
        out.tensors.emplace_back(f.path.substr(prefix.size()), reader.materialize(*t));
      }
      continue;
    }
    std::vector<std::pair<std::string, ValuePtr>> children;
    if (const auto* d = std::get_if<Dict>(&v->v)) {
      for (const auto& [key, value] : d->items) {
        if (auto component = path_component(key)) {
          children.emplace_back(*component, value);
        }
      }
    } else if (const auto* l = std::get_if<List>(&v->v)) {
      for (size_t i = 0; i < l->items.size(); ++i) {
        children.emplace_back(std::to_string(i), l->items[i]);
      }
    } else if (const auto* tu = std::get_if<Tuple>(&v->v)) {
      for (size_t i = 0; i < tu->items.size(); ++i) {
        children.emplace_back(std::to_string(i), tu->items[i]);
      }
    } else {
      if (const auto* i = std::get_if<int64_t>(&v->v)) {
        out.integers.emplace_back(f.path, *i);
      }
      continue; // a plain value (number, string, bytes, None): no tensor
    }
    TORCH_CHECK(
        open.insert(v).second, "load_tensors: '", path, "' holds a container inside itself");
    TORCH_CHECK(
        f.depth < kMaxDepth,
        "load_tensors: '",
        path,
        "' nests containers deeper than ",
        kMaxDepth,
        " levels");
    if (v == root.get()) {
      for (const auto& [component, value] : children) {
        out.top_level_keys.push_back(component);
      }
    }
    pending.push_back({f.value, "", true, f.depth});
    for (auto it = children.rbegin(); it != children.rend(); ++it) {
      pending.push_back(
          {it->second, f.path.empty() ? it->first : f.path + "." + it->first, false, f.depth + 1});
    }
  }
  return out;
}

} // namespace rotary_attention::detail
