"""The synthetic corpus's English lexicon, written for this project (no corpus text).

Lemmas by part of speech; :mod:`speechssl.data.synth.text` inflects them (plurals,
past tense, third person) and adds pronounceable pseudo-words built from syllables,
so the vocabulary runs to a few thousand word forms and never ends for names.
"""

NOUNS = """
apple acorn actor admiral airport album alley anchor angel ankle answer ant apron arch arrow
artist attic author avenue axe baby badge bag baker balcony ball balloon banana band bank barn
barrel basket bath battery beach bean bear beard bed bee bell belt bench berry bicycle bird
biscuit blanket blossom boat body bone book boot bottle bowl box boy bracelet branch bread brick
bride bridge brother brush bucket bug building bull bunny bus bush butcher butter button cabin
cabinet cable cake calendar camel camera camp candle cannon canoe canvas cap captain car card
carpet carrot cart castle cat cave ceiling cellar chain chair chalk champion channel chapter
cheek cheese chef cherry chest chicken child chimney chin circle city classroom clerk cliff
clock cloud clown coach coast coat coffee coin collar comet compass computer cook cookie copper
corner cottage cotton couch counter cousin cow crab cradle crane crayon creek cricket crow crown
cup cupboard curtain cushion customer daisy dancer daughter deck deer dentist desert desk diamond
dinner dish doctor dog doll dolphin donkey door dragon drawer dream dress driver drum duck eagle
ear editor egg elbow elephant elevator engine engineer envelope eraser fairy falcon farm farmer
feather fence ferry field finger fire fish flag flame flower flute fog folder forest fork fountain
fox frog fruit garage garden gate giant gift giraffe girl glass glove goat goose grandmother
grape grass guard guest guitar hall hammer hand harbor hat hawk head heart hedge helmet hill
hippo hive hole honey hook horn horse hospital hotel house hunter island jacket jar jewel judge
jungle kettle key king kitchen kite kitten knee knife ladder lady lake lamb lamp lantern lawyer
leaf lemon letter library lighthouse lion lizard lobster lock lunch magnet mailbox man map marble
market mask meadow melon merchant message meteor mirror mitten monkey moon mountain mouse mouth
mug museum nail napkin needle nest net newspaper nose notebook nurse oak ocean octopus office
onion orange orchard otter oven owl painter palace pan panda paper parade parcel park parrot path
peach peanut pear pebble pen pencil penguin pepper piano picnic picture pie pig pigeon pillow
pilot pine pipe pirate planet plate player plum pocket poet pond pony pot potato pumpkin puppet
puppy queen rabbit radio raft rainbow rake raven ribbon ring river road robin robot rock rocket
roof room rope rose sailor salad sandwich saucer scarf school scientist scissors sculpture seal
seed shadow shark sheep shelf shell ship shirt shoe shop shovel singer sister skirt sled snail
snake soldier spider spoon squirrel stable stage star station statue stone storm stove street
student submarine suitcase sun swan sweater table tablet tail teacher teapot telescope tent
thread throne tiger toad toast tomato tongue tool tooth torch tortoise tower town toy tractor
train tray treasure tree truck trumpet tulip tunnel turkey turtle umbrella uncle valley van vase
village violin volcano wagon waiter wall wallet walnut wand wardrobe watch waterfall wave whale
wheel whistle window wing wizard wolf worm writer yacht yard zebra album anthem archer badger
bakery bamboo banner beacon beetle blender bonnet bottle boulder brook buffalo cactus canyon
carriage cathedral cello chariot cloak cobbler comb coyote crystal dune emerald falconer ferret
fiddle firefly flagpole gadget gallery garnet glacier goblet gondola granite hammock harp
hedgehog heron hourglass iceberg igloo jaguar jigsaw kayak kennel lagoon lantern leopard lettuce
lily llama locket magpie mango marsh meadow minnow moose mosaic moth muffin mushroom noodle
oasis olive orchid ostrich paddle pancake panther parsnip pasture peacock pelican pendant pepper
pickle pinecone plank pudding puffin quilt raccoon radish reindeer saddle satchel scooter
seashell sparrow spinach sponge stallion starfish stork strawberry sundial swamp teacup thimble
thistle tiara toucan trolley trombone tuba turnip vulture walrus weasel willow windmill yak
""".split()

IRREGULAR_PLURALS = {
    "child": "children", "man": "men", "mouse": "mice", "goose": "geese", "tooth": "teeth",
    "sheep": "sheep", "deer": "deer", "fish": "fish", "moose": "moose", "scissors": "scissors",
    "knife": "knives", "leaf": "leaves", "wolf": "wolves", "scarf": "scarves", "shelf": "shelves",
    "lady": "ladies", "yak": "yaks", "cactus": "cacti", "oasis": "oases",
}  # fmt: skip

PLACES = """
kitchen garden library station market harbor village forest valley museum hospital school
bakery cellar attic meadow island beach tunnel castle palace office cottage orchard stable
""".split()

ADJECTIVES = """
able afraid ancient angry anxious bald beautiful big bitter black blue bold bored brave bright
brilliant broad broken brown busy calm careful cheap cheerful clean clever cloudy clumsy cold
colorful comfortable cool crazy creamy crisp crooked cruel curious curly cute damp dark dear deep
delicate delightful dirty dizzy dry dull dusty eager early easy elegant empty enormous equal
exciting expensive faint fair famous fancy fast fat fierce fine flat fluffy foolish fragile free
fresh friendly frozen funny fuzzy gentle giant gigantic gloomy glossy golden good gorgeous grand
gray great green grumpy happy hard harsh healthy heavy helpful hollow honest hot huge humble
hungry icy idle important innocent jolly juicy kind large lazy light little lively lonely long
loud lovely low lucky magic massive mellow messy mighty mild modern muddy narrow nasty naughty
neat nervous new nice noisy odd old orange pale patient peaceful perfect pink plain pleasant
polite poor pretty proud purple quick quiet rapid rare raw red rich ripe rough round royal rusty
sad salty scary shallow sharp shiny short shy silent silly silver simple slim slow small smooth
soft solid sour spicy splendid square steady steep sticky stiff strange strict strong sturdy
sudden sunny super sweet swift tall tame tasty tender thick thin thirsty tidy tiny tired tough
tricky ugly unusual useful vast velvet violet warm weak wealthy wet white whole wicked wide wild
wise wooden woolly worried yellow young zealous amber azure brisk crimson dainty dapper drowsy
earnest feeble fickle frosty gallant giddy glum hasty hearty hefty jagged keen lanky limp lofty
meek merry misty nimble nosy plump prickly quaint rowdy rugged rustic scruffy shabby shaggy
sleepy sloppy snug soggy spotted stormy stout sulky tangy tattered timid tranquil twinkly
vivid wobbly wry zesty
""".split()

# Transitive verbs with regular past tense; spelling rules in text.py.
VERBS_REGULAR = """
accept admire allow answer arrange attach attack borrow brush burn call carry chase check clean
climb collect cook copy count cover crash cross cure decorate deliver describe destroy discover
dress drop dust enjoy examine explain fill finish fix fold follow guard handle help hug hunt
imagine inspect invent join kick kiss knock label lift like list load lock love mark measure
melt mend miss move name notice observe open order organize pack paint park pass peel pick plant
polish pour praise prepare press print pull punch push question reach receive record rescue
return roll rub save scrub search serve share show sketch slice smell sort spill squash stamp
start stir stuff tickle touch tow trace trap visit wash watch weigh wipe wrap
""".split()

# Irregular transitive verbs: base, past.
VERBS_IRREGULAR = dict(
    pair.split(":")
    for pair in """
bring:brought build:built buy:bought catch:caught choose:chose draw:drew drive:drove eat:ate
feed:fed find:found forget:forgot freeze:froze give:gave grab:grabbed hide:hid hold:held keep:kept
leave:left lend:lent lose:lost make:made meet:met read:read ride:rode see:saw sell:sold send:sent
shake:shook sing:sang steal:stole sweep:swept take:took teach:taught tear:tore throw:threw
wear:wore win:won write:wrote hear:heard spin:spun bend:bent dig:dug fling:flung
""".split()
)

# Intransitive verbs: base, past.
VERBS_INTRANSITIVE = dict(
    pair.split(":")
    for pair in """
arrive:arrived bark:barked blink:blinked bounce:bounced cry:cried dance:danced dive:dove
fall:fell float:floated fly:flew giggle:giggled glow:glowed grow:grew hop:hopped hum:hummed
jump:jumped laugh:laughed listen:listened march:marched nap:napped paddle:paddled pause:paused
rest:rested run:ran shiver:shivered shout:shouted sing:sang sit:sat skip:skipped sleep:slept
slide:slid smile:smiled sneeze:sneezed snore:snored speak:spoke spin:spun stand:stood swim:swam
travel:traveled wait:waited wake:woke walk:walked wander:wandered whisper:whispered wink:winked
work:worked yawn:yawned
""".split()
)

ADVERBS = """
quickly slowly quietly loudly happily sadly gently carefully suddenly eagerly calmly boldly
bravely brightly busily cheerfully clumsily early easily finally gladly gracefully honestly
kindly lazily lightly merrily neatly nervously often openly patiently politely proudly rapidly
rarely roughly rudely safely seldom silently smoothly softly soon sternly swiftly tenderly
today tomorrow yesterday twice warmly wildly wisely again together
""".split()

PREPOSITIONS = "near behind beside under above inside across around toward beyond".split()

FIRST_NAMES = """
alice amber andrew anna arthur beatrice bella ben bruno carla carmen chloe clara daniel david
diana edgar elena ella emil emma eva felix fiona frank george grace hannah harry hazel helen
henry hugo ida irene isaac ivan jack jane jasper julia karl kate laura leo lily lucas lucy mabel
maria mark martin max mia nadia nina noah oliver olivia oscar paul peter rosa ruby sam sara simon
sophie stella thomas tina victor vera walter wendy zoe
""".split()

NUMBERS = """
one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen twenty
thirty forty fifty hundred
""".split()

DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()

# Syllable inventory for pseudo-words (names of places, artists, songs): onset, nucleus, coda.
ONSETS = "b d f g h k l m n p r s t v w z br dr fr gr kl pl st tr sk sl".split()
NUCLEI = "a e i o u a e o ai oo".split()
CODAS = ["", "", "", "n", "l", "r", "s", "m", "k", "t", "nd", "st"]
